-- Records a new queued job in one step: only if the queue has room (limit 0: none), its key
-- can pay (cost -1: nobody pays) and, with an idempotency key, the key is still bound to this
-- job; charging the key in the same step. Also its place in the queue, in the orphan check
-- and in its shape's list of batching candidates, the Redis copy of its input (image ''
-- for none) and, as its owner's latest job, its id. A job already recorded is left as it is (a repeated call whose reply was lost).
-- Returns {'queued', balance after the charge} or {'full' | 'credits' | 'revoked' |
-- 'superseded', balance}.
--
-- keys: queued job events stats shape input apikey sent idempotency latest
-- args: limit cost ttl id created_at shape_cap image idempotency_value fields...

if redis.call('EXISTS', K.job) == 1 then
  return {'queued', tonumber(redis.call('HGET', K.apikey, 'balance') or '0')}
end
if A.idempotency_value ~= '' and redis.call('GET', K.idempotency) ~= A.idempotency_value then
  return {'superseded', 0}
end
local limit = tonumber(A.limit)
if limit > 0 and redis.call('ZCARD', K.queued) >= limit then return {'full', 0} end
local balance = 0
local cost = tonumber(A.cost)
if cost >= 0 then
  if redis.call('EXISTS', K.apikey) == 0 or redis.call('HGET', K.apikey, 'revoked') == '1' then
    return {'revoked', 0}
  end
  balance = tonumber(redis.call('HGET', K.apikey, 'balance'))
  if balance < cost then return {'credits', balance} end
  balance = redis.call('HINCRBY', K.apikey, 'balance', -cost)
end
redis.call('ZADD', K.queued, A.created_at, A.id)
redis.call('ZADD', K.sent, A.created_at, A.id)
redis.call('HSET', K.job, unpack(A.fields))
redis.call('EXPIRE', K.job, A.ttl)
redis.call('XADD', K.events, 'MAXLEN', '~', 64, '*', 'status', 'queued')
redis.call('EXPIRE', K.events, A.ttl)
redis.call('HINCRBY', K.stats, 'jobs_queued', 1)
if A.image ~= '' then redis.call('SET', K.input, A.image, 'EX', A.ttl) end
redis.call('RPUSH', K.shape, A.id)
redis.call('LTRIM', K.shape, -tonumber(A.shape_cap), -1)
redis.call('EXPIRE', K.shape, A.ttl)
redis.call('SET', K.latest, A.id, 'EX', A.ttl)
return {'queued', balance}
