-- Argo CD health check for agentgate.dev/v1alpha1 ApprovalRequest (see deploy/argocd/README.md).
-- ApprovalRequests are created by gateways, not from Git; this check matters when an application
-- tracks them (for example an app of the agentgate namespace). By status.phase:
--   no status, Pending -> Progressing (waiting for a human decision)
--   Approved, Used     -> Healthy
--   Denied, Expired    -> Degraded (the operation was refused or nobody decided in time)
-- Plain Lua 5.1 (Argo CD's gopher-lua).
local hs = {}
local summary = ""
if obj.spec ~= nil and obj.spec.operation ~= nil and obj.spec.operation.summary ~= nil then
  summary = ": " .. obj.spec.operation.summary
end
local status = obj.status
local phase = status and status.phase or nil
if phase == nil or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Pending: waiting for an approver" .. summary
  return hs
end
if phase == "Approved" or phase == "Used" then
  hs.status = "Healthy"
  hs.message = phase .. summary
  if phase == "Approved" and status.grantExpiresAt ~= nil then
    hs.message = hs.message .. " (grant until " .. status.grantExpiresAt .. ")"
  end
  return hs
end
if phase == "Denied" or phase == "Expired" then
  hs.status = "Degraded"
  hs.message = phase .. summary
  return hs
end
hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
