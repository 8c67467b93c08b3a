-- summarize groups readings by sensor and returns count/min/max/mean of each.
local out = {}
for i, r in ipairs(readings) do
  if type(r) ~= "table" or type(r.sensor) ~= "string" or type(r.value) ~= "number" then
    error("readings[" .. i .. "] must be {sensor = string, value = number}")
  end
  local s = out[r.sensor]
  if s == nil then
    s = {count = 0, min = r.value, max = r.value, sum = 0}
    out[r.sensor] = s
  end
  s.count = s.count + 1
  s.sum = s.sum + r.value
  if r.value < s.min then s.min = r.value end
  if r.value > s.max then s.max = r.value end
end
for _, s in pairs(out) do
  s.mean = s.sum / s.count
  s.sum = nil
end
return out
