-- wrk script: POST a small JSON message to the echo webhook given as the URL.
wrk.method = "POST"
wrk.body = '{"text":"bench","from":"wrk"}'
wrk.headers["Content-Type"] = "application/json"
