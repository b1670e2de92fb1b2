-- Argo CD health check for modelkiln.io/InferenceModel (argocd-cm-health.yaml installs it).
-- Follows kstatus: the status must describe the current spec (observedGeneration), then the
-- Ready condition decides. Ready=False for a reason that needs a person is Degraded; any other
-- Ready=False is Progressing (converting, rolling out, waiting for replicas).
local failure_reasons = {ConversionFailed = true, NoDevicePool = true, RepositoryMissing = true,
                         RolledBack = true, RolloutAborted = true}

local function find_condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function health(obj)
  local generation = obj.metadata and obj.metadata.generation
  local status = obj.status
  if status == nil or status.observedGeneration == nil then
    return "Progressing", "Waiting for the operator to report status"
  end
  if generation ~= nil and status.observedGeneration < generation then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(generation)
  end
  local ready = find_condition(status.conditions, "Ready")
  if ready == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
    return "Progressing", "Ready describes generation " .. tostring(ready.observedGeneration)
  end
  local message = (ready.reason or "") .. ": " .. (ready.message or "")
  if ready.status == "True" then
    return "Healthy", message
  end
  for _, condition in ipairs(status.conditions) do
    if condition.status == "False" and failure_reasons[condition.reason] then
      return "Degraded", (condition.reason or "") .. ": " .. (condition.message or "")
    end
  end
  return "Progressing", message
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
