-- wrk request mix: 60 endpoint templates, 1000 ids each, 10,000 rotating sessions.
counter = 0
request = function()
  counter = counter + 1
  local path = "/api/catalog/s" .. (counter % 60) .. "/items/" .. (counter % 1000)
  return wrk.format("GET", path, { ["Cookie"] = "session=b" .. (counter % 10000) })
end
