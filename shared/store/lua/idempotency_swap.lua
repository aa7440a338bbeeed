-- Compare and swap of an idempotency key, keeping its expiry; a new value '' deletes it.
--
-- keys: idempotency
-- args: expected new

if redis.call('GET', K.idempotency) ~= A.expected then return 0 end
if A.new == '' then redis.call('DEL', K.idempotency) else redis.call('SET', K.idempotency, A.new, 'KEEPTTL') end
return 1
