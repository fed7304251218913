-- Argo CD health check for disagg.dev/DisaggregatedModel (Lua 5.1, as Argo CD's gopher-lua).
-- Modelled on Argo CD's built-in check for KServe's LLMInferenceService: a generation the
-- operator has not observed yet is Progressing; then the operator's conditions decide.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- a spec the operator cannot act on (Degraded=True) wins over a stale rollout
local degraded = condition(obj.status, "Degraded")
local ready = condition(obj.status, "Ready")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, text(ready, "Degraded"))
  return hs
end

local zero = condition(obj.status, "ScaledToZero")
if zero ~= nil and zero.status == "True" then
  hs.status = "Suspended"
  hs.message = text(zero, "Scaled to zero")
  return hs
end

local progressing = condition(obj.status, "Progressing")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = text(progressing, "Rolling out")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
