-- Argo CD health check for kubetune.dev/ModelDeployment.
-- Install: argocd-cm key resource.customizations.health.kubetune.dev_ModelDeployment (see
-- argocd-cm-health.yaml beside this file and docs/gitops.md). Tested by
-- tests/integration/test_gitops.py with gopher-lua, the interpreter Argo CD runs it in, against
-- statuses the real operator wrote.
--
--   Ready                     -> Healthy (the desired version answers on every pod)
--   Pending, Progressing      -> Progressing (nothing servable yet / pods or a version preparing)
--   Degraded                  -> Degraded (the desired version failed or was rolled back; the
--                                message says which version still serves)
--   condition Stalled=True    -> Degraded, whatever the phase (a desired version that failed
--                                before anything was served leaves the phase Pending)
--   status not yet written, or written for an older metadata.generation -> Progressing
-- A ModelDeployment is never Suspended: it has no spec.suspend.
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
hs.message = message
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      hs.status = "Degraded"
      return hs
    end
  end
end
if st.phase == "Ready" then
  hs.status = "Healthy"
elseif st.phase == "Degraded" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs
