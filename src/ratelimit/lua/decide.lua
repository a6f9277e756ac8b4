-- One budget decision, atomically, in the Redis server's time (the sidecars' clocks do not
-- matter). KEYS[1]: the upstream's cooldown, KEYS[2]: the endpoint's hold, KEYS[3]: the prefix
-- of the budget's window counters. ARGV: weight, window_ms (0: no budget), limit, slice (the
-- weight to lease at once, so the next requests need no round trip).
-- Returns {0, ms left in the window, window, granted, used} to go, {1, ms} cooling down,
-- {2, ms} held, {3, ms left in the window, window, 0, used} when the window is full.
local c = redis.call('PTTL', KEYS[1])
if c > 0 then return {1, c, 0, 0, 0} end
local h = redis.call('PTTL', KEYS[2])
if h > 0 then return {2, h, 0, 0, 0} end
local window_ms = tonumber(ARGV[2])
if window_ms == 0 then return {0, 0, 0, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = math.floor(now / window_ms)
local left = (window + 1) * window_ms - now
local key = KEYS[3] .. window
local used = tonumber(redis.call('GET', key) or '0')
local weight = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
-- A request heavier than the whole budget goes alone into an empty window.
if used + weight > limit and used > 0 then return {3, left, window, 0, used} end
local grant = math.max(weight, math.min(tonumber(ARGV[4]), limit - used))
used = redis.call('INCRBY', key, grant)
redis.call('PEXPIRE', key, window_ms * 2)
return {0, left, window, grant, used}
