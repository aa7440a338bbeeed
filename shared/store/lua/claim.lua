-- Takes a job to run: a queued one, or a running one whose lease lapsed (its worker died).
-- A started job leaves its shape's list of batching candidates. After max_attempts starts
-- the job fails (and is refunded) instead. A job whose record has expired leaves every set,
-- so the sweeper stops handing it out. Returns {outcome, attempt or seconds, and when
-- started: job fields, queued jobs left and the input copy (false once expired)}: started
-- (also to the worker that holds the lease, as the same start: a repeated call), busy (lease
-- held), exhausted, missing, upload (succeeded, outputs not yet in S3), or the final status.
--
-- keys: job events queued running stats input sent uploads failures
-- args: worker lease_seconds max_attempts ttl apikey_prefix id shape_prefix
-- include: refund

local status = redis.call('HGET', K.job, 'status')
if not status then
  for _, set in ipairs({K.queued, K.running, K.sent, K.uploads}) do redis.call('ZREM', set, A.id) end
  return {'missing', 0}
end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
if status == 'running' then
  local lease = tonumber(redis.call('ZSCORE', K.running, A.id) or '0')
  if lease > t and redis.call('HGET', K.job, 'worker') == A.worker then
    return {'started', tonumber(redis.call('HGET', K.job, 'attempts')), redis.call('HGETALL', K.job),
      redis.call('ZCARD', K.queued), redis.call('GET', K.input)}
  end
  if lease > t then return {'busy', tostring(lease - t)} end
elseif status == 'succeeded' and redis.call('HGET', K.job, 'upload_pending') == '1' then
  return {'upload', 0}
elseif status ~= 'queued' then
  return {status, 0}
end
local attempt = redis.call('HINCRBY', K.job, 'attempts', 1)
redis.call('ZREM', K.queued, A.id)
redis.call('ZREM', K.sent, A.id)
if attempt > tonumber(A.max_attempts) then
  redis.call('ZREM', K.running, A.id)
  redis.call('HSET', K.job, 'status', 'failed', 'finished_at', tostring(t),
    'error', 'the job was started ' .. (attempt - 1) .. ' times and its worker died each time')
  refund(K.job, A.apikey_prefix)
  redis.call('XADD', K.events, 'MAXLEN', '~', 64, '*', 'status', 'failed')
  redis.call('HINCRBY', K.stats, 'jobs_failed', 1)
  redis.call('LPUSH', K.failures, A.id)
  redis.call('LTRIM', K.failures, 0, 99)
  return {'exhausted', attempt - 1}
end
redis.call('HSET', K.job, 'status', 'running', 'worker', A.worker, 'progress_step', '0')
if status == 'queued' then redis.call('HSET', K.job, 'started_at', tostring(t)) end
local shape = redis.call('HGET', K.job, 'shape')
if shape then redis.call('LREM', A.shape_prefix .. shape, 1, A.id) end
redis.call('ZADD', K.running, t + tonumber(A.lease_seconds), A.id)
redis.call('XADD', K.events, 'MAXLEN', '~', 64, '*', 'status', 'running')
redis.call('EXPIRE', K.job, A.ttl)
redis.call('EXPIRE', K.events, A.ttl)
redis.call('HINCRBY', K.stats, 'jobs_running', 1)
return {'started', attempt, redis.call('HGETALL', K.job), redis.call('ZCARD', K.queued), redis.call('GET', K.input)}
