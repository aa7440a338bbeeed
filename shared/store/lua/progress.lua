-- Records a finished denoising step and renews the lease of a running job. Returns 1 when
-- the worker must stop: the job was canceled, or it is no longer this attempt's to run (its
-- lease lapsed and another worker took it over).
--
-- keys: job running
-- args: step total attempt lease_seconds id

if redis.call('HGET', K.job, 'status') ~= 'running' then return 1 end
if redis.call('HGET', K.job, 'attempts') ~= A.attempt then return 1 end
redis.call('HSET', K.job, 'progress_step', A.step, 'progress_total', A.total)
local now = redis.call('TIME')
redis.call('ZADD', K.running, tonumber(now[1]) + tonumber(A.lease_seconds), A.id)
if redis.call('HGET', K.job, 'cancel_requested') == '1' then return 1 end
return 0
