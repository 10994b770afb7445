-- Argo CD health check for lora-operator.io/LoraTrainingJob.
-- Argo CD runs it with gopher-lua (Lua 5.1): `obj` is the live resource, JSON nulls are absent.
--
--   Pending / Queued / Running -> Progressing (queue position or progress % in the message)
--   Succeeded                  -> Healthy
--   Failed                     -> Degraded (status.message, else the Failed condition's message)
--   Cancelled                  -> Degraded: the job ended without the adapter the application
--                                 declares; a cancel is deliberate but still leaves the app without
--                                 its result, and Degraded is the state that makes people look.
--   Suspended / spec.suspend   -> Suspended (unless the job already finished)
--   no status yet              -> Progressing; an unknown phase -> Unknown

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

local function first_message(...)
  for i = 1, select("#", ...) do
    local m = select(i, ...)
    if m ~= nil and m ~= "" then
      return m
    end
  end
  return nil
end

local function running_message(status)
  local parts = {}
  local p = status.progress
  if p ~= nil then
    table.insert(parts, string.format("%d%%", math.floor(tonumber(p.percent or 0))))
    if p.totalEpochs ~= nil and p.totalEpochs > 0 then
      table.insert(parts, string.format("epoch %d/%d", math.floor(p.epoch or 0), math.floor(p.totalEpochs)))
    end
    if p.totalSteps ~= nil and p.totalSteps > 0 then
      table.insert(parts, string.format("step %d/%d", math.floor(p.step or 0), math.floor(p.totalSteps)))
    end
  end
  if status.node ~= nil then
    table.insert(parts, "on " .. status.node)
  end
  if status.attempt ~= nil and status.attempt > 1 then
    table.insert(parts, string.format("attempt %d", math.floor(status.attempt)))
  end
  if #parts == 0 then
    return "Running"
  end
  return "Running " .. table.concat(parts, ", ")
end

local hs = {}
local spec = obj.spec or {}
local status = obj.status

if status == nil or status.phase == nil then
  if spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "Suspended (spec.suspend) before the operator queued the job"
  else
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to validate and queue the job"
  end
  return hs
end

local phase = status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  local n = 0
  if status.checkpoints ~= nil then
    n = #status.checkpoints
  end
  hs.message = first_message(status.message, string.format("Training complete: %d checkpoint(s)", n))
  return hs
end

if phase == "Failed" then
  local failed = condition(status, "Failed") or {}
  hs.status = "Degraded"
  hs.message = first_message(status.message, failed.message, failed.reason, "Failed")
  return hs
end

if phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = "Cancelled: " .. (first_message(status.message, "the job ended before training finished"))
  return hs
end

if spec.suspend == true or phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = first_message(status.message, "Suspended (spec.suspend)")
  return hs
end

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = first_message(status.message, "Pending: waiting for the operator to queue the job")
  return hs
end

if phase == "Queued" then
  hs.status = "Progressing"
  if status.queuePosition ~= nil then
    hs.message = string.format("Queued (position %d)", math.floor(status.queuePosition))
  else
    hs.message = "Queued"
  end
  if status.notBefore ~= nil then
    hs.message = hs.message .. ", retrying after " .. status.notBefore
  end
  return hs
end

if phase == "Running" then
  hs.status = "Progressing"
  hs.message = running_message(status)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
