-- Argo CD health check for kubetune.dev/FineTuneJob.
-- Install: argocd-cm key resource.customizations.health.kubetune.dev_FineTuneJob (see
-- argocd-cm-health.yaml beside this file and docs/gitops.md). Tested by
-- tests/integration/test_gitops.py with gopher-lua, the interpreter Argo CD runs it in, against
-- statuses the real operator wrote.
--
--   Pending, Running                        -> Progressing (the message says what it waits for)
--   Succeeded, quality gate passed or none  -> Healthy
--   Succeeded, quality gate failed          -> Degraded (the model exists but must not be served)
--   Failed                                  -> Degraded
--   Suspended                               -> Suspended
--   status not yet written, or written for an older metadata.generation -> Progressing
local hs = {}
local st = obj.status
if st == nil or st.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to report a status"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to observe generation " .. generation
  return hs
end
local message = st.message or ""
if st.reason ~= nil and st.reason ~= "" then
  message = st.reason .. ": " .. message
end
if st.phase == "Succeeded" then
  if st.conditions ~= nil then
    for _, c in ipairs(st.conditions) do
      if c.type == "GatePassed" and c.status == "False" then
        hs.status = "Degraded"
        hs.message = "Quality gate failed: " .. (c.message or "")
        return hs
      end
    end
  end
  hs.status = "Healthy"
  hs.message = message
  return hs
end
if st.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
  return hs
end
if st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end
hs.status = "Progressing"
if st.progress ~= nil and st.progress.percent ~= nil and st.phase == "Running" then
  message = message .. " (" .. st.progress.percent .. "%)"
end
hs.message = message
return hs
