-- A cooldown or hold of ARGV[1] ms on KEYS[1], never shortening one in force, then told to every
-- sidecar on channel KEYS[2] (ARGV[2] is the message).
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
