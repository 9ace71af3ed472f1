-- Argo CD health check for agentgate.dev/v1alpha1 Connection (see deploy/argocd/README.md).
-- The operator reports status.observedGeneration and status.conditions:
--   no status yet, or an older generation observed    -> Progressing
--   Invalid=True, or Ready=False                       -> Degraded, with the condition's message
--   Ready=True                                         -> Healthy
--   Ready missing or Unknown                           -> Progressing
-- Plain Lua 5.1 (Argo CD's gopher-lua).
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Invalid" and condition.status == "True" then
      hs.status = "Degraded"
      hs.message = condition.message or condition.reason or "Invalid"
      return hs
    end
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = (ready and ready.message ~= nil and ready.message ~= "") and ready.message
    or "Waiting for the Ready condition"
  return hs
end
if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = (ready.message ~= nil and ready.message ~= "") and ready.message or "Ready"
  return hs
end
hs.status = "Degraded"
hs.message = ready.message or ready.reason or "Not ready"
return hs
