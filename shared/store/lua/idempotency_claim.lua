-- Binds an idempotency key to a job unless it is bound already; returns the fingerprint and
-- the job id it is bound to.
--
-- keys: idempotency
-- args: fingerprint job_id ttl

local ok = redis.call('SET', K.idempotency, A.fingerprint .. ' ' .. A.job_id, 'NX', 'EX', A.ttl)
if ok then return {A.fingerprint, A.job_id} end
local value = redis.call('GET', K.idempotency)
local space = string.find(value, ' ')
return {string.sub(value, 1, space - 1), string.sub(value, space + 1)}
