-- Checks a presented API key by its digest and counts the request in the key's rate window
-- (window 0: not counted). Returns false unless the digest matches a key that is not revoked;
-- else {requests counted in this window, the key's fields...}. Only a valid key counts a
-- request, so wrong secrets never use up a key's rate limit.
--
-- keys: apikey window
-- args: digest window_seconds

local stored = redis.call('HGET', K.apikey, 'hash')
if not stored or stored ~= A.digest or redis.call('HGET', K.apikey, 'revoked') == '1' then
  return false
end
local count = 0
if tonumber(A.window_seconds) > 0 then
  count = redis.call('INCR', K.window)
  if count == 1 then redis.call('EXPIRE', K.window, A.window_seconds + 1) end
end
return {count, redis.call('HGETALL', K.apikey)}
