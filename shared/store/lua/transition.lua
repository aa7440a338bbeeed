-- Moves a job from one of the allowed statuses (space-separated) to a new one, writing the
-- fields given and appending an event, and counts it under jobs_<new status>. A move from
-- running with an attempt ('': any) happens only while that attempt owns the job, so a worker
-- whose lease was taken over cannot end the job another worker runs. A failed job, or one
-- canceled before it ran, gets its charge back in the same step; a failed one goes to the
-- head of the capped list of recent failures. Returns {1, previous
-- status} when moved, else {0, current status ('' for no job, 'another attempt')}.
--
-- keys: job events queued running sent stats failures
-- args: allowed new ttl id apikey_prefix attempt fields...
-- include: refund

local current = redis.call('HGET', K.job, 'status')
if not current then return {0, ''} end
local allowed = false
for s in string.gmatch(A.allowed, '%S+') do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
if A.attempt ~= '' and current == 'running' and redis.call('HGET', K.job, 'attempts') ~= A.attempt then
  return {0, 'another attempt'}
end
redis.call('HSET', K.job, 'status', A.new, unpack(A.fields))
if current == 'queued' then
  redis.call('ZREM', K.queued, A.id)
  redis.call('ZREM', K.sent, A.id)
end
if current == 'running' then redis.call('ZREM', K.running, A.id) end
if A.new == 'failed' or (A.new == 'canceled' and current == 'queued') then refund(K.job, A.apikey_prefix) end
if A.new == 'failed' then
  redis.call('LPUSH', K.failures, A.id)
  redis.call('LTRIM', K.failures, 0, 99)
end
redis.call('XADD', K.events, 'MAXLEN', '~', 64, '*', 'status', A.new)
redis.call('EXPIRE', K.job, A.ttl)
redis.call('EXPIRE', K.events, A.ttl)
redis.call('HINCRBY', K.stats, 'jobs_' .. A.new, 1)
return {1, current}
