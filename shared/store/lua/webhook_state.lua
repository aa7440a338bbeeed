-- Records how a job's webhook ended, once, on a job that still exists (HSETNX alone would
-- recreate an expired hash with no expiry).
--
-- keys: job
-- args: state

if redis.call('EXISTS', K.job) == 0 then return 0 end
return redis.call('HSETNX', K.job, 'webhook_state', A.state)
