-- Marks a running job for cancelation (its worker stops at the next step); returns the
-- job's status. A queued job is canceled by a transition instead.
--
-- keys: job
-- args:

local current = redis.call('HGET', K.job, 'status')
if current == 'running' then redis.call('HSET', K.job, 'cancel_requested', '1') end
return current
