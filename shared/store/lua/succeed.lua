-- running -> succeeded for this attempt only (a worker that lost its lease writes nothing);
-- 1 again for a job this attempt has already succeeded (a repeated call). The images are
-- kept in Redis, without the short cache expiry, until S3 holds them (JobStore.uploaded);
-- the uploads set lets the sweeper finish an upload whose worker died. The counters
-- ("name amount ...") are added to the stats hash in the same step, so they are up to date
-- when a client sees the job end.
--
-- keys: job events running uploads stats results...
-- args: attempt ttl id outputs generation_time finished_at upload_deadline counters images...

local status = redis.call('HGET', K.job, 'status')
if redis.call('HGET', K.job, 'attempts') ~= A.attempt then return 0 end
if status == 'succeeded' then return 1 end
if status ~= 'running' then return 0 end
for i, result in ipairs(K.results) do redis.call('SET', result, A.images[i], 'EX', A.ttl) end
local name = nil
for word in string.gmatch(A.counters, '%S+') do
  if name then redis.call('HINCRBY', K.stats, name, word); name = nil else name = word end
end
redis.call('HSET', K.job, 'status', 'succeeded', 'outputs', A.outputs, 'generation_time', A.generation_time,
  'finished_at', A.finished_at, 'upload_pending', '1')
redis.call('ZREM', K.running, A.id)
redis.call('ZADD', K.uploads, A.upload_deadline, A.id)
redis.call('XADD', K.events, 'MAXLEN', '~', 64, '*', 'status', 'succeeded')
redis.call('EXPIRE', K.job, A.ttl)
redis.call('EXPIRE', K.events, A.ttl)
redis.call('HINCRBY', K.stats, 'jobs_succeeded', 1)
return 1
