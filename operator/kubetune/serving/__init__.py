"""The serve-agent: the kubetune container beside Ollama in every ModelDeployment pod.

It reads the deployment's :class:`~kubetune.api.serving.ServingConfig` from the mounted
ConfigMap, makes its own Ollama hold exactly the listed versions (fetched once, sha256-checked,
registered by digest), points the model name at the served version, and reports what it holds
as an :class:`~kubetune.api.serving.AgentStatus` on ``GET /status``.

Modules, in the order a version goes through them:

- :mod:`.config`     the agent's settings (flags and environment) and reading serving.json
- :mod:`.fetch`      pvc://, file://, https:// and s3:// sources into the cache, sha256-checked
- :mod:`.modelfile`  the TEMPLATE / SYSTEM / PARAMETER lines of an exported Modelfile
- :mod:`.ollama`     the few Ollama endpoints the agent calls
- :mod:`.versions`   one version: fetch -> checksum -> register -> load -> generate
- :mod:`.agent`      the loop: config, versions, alias, deletions, loaded models, status
- :mod:`.server`     /healthz, /readyz and /status
"""
