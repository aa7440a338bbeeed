-- Gives a job's charge back to its key, at most once: `refunded` is set with HSETNX.
local function refund(job, apikey_prefix)
  local owner = redis.call('HGET', job, 'owner')
  local cost = tonumber(redis.call('HGET', job, 'cost') or '0')
  if owner and owner ~= '' and cost > 0 and redis.call('HSETNX', job, 'refunded', '1') == 1 then
    redis.call('HINCRBY', apikey_prefix .. owner, 'balance', cost)
  end
end
