#!/bin/sh
# deploy.sh of a Django app deployed in place (README: "Deploying a Django app in place").
# deployq runs it in the work tree after each push to master, as
#   restart = { script = ["./deploy.sh"] }
# It migrates, collects the static files, and restarts the app server in the background.
# What it leaves running is left alone once it exits 0; had it failed, deployq would stop it.
set -eu
PORT="${PORT:-8000}"
mkdir -p var

python3 manage.py migrate --noinput
python3 manage.py collectstatic --noinput

# Stop the server the previous deploy started (its pid is in var/server.pid), and wait until it is gone.
if [ -f var/server.pid ]; then
  old="$(cat var/server.pid)"
  if kill "$old" 2>/dev/null; then
    while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f var/server.pid
fi

# Start the new one. nohup sends the output to nohup.out only when it is a terminal (it is not
# under deployq), so redirect it: the server outlives this script and its deploy's log.
nohup python3 manage.py runserver --noreload "127.0.0.1:$PORT" >>var/server.log 2>&1 &
echo $! > var/server.pid

# Exit once it answers (deployq's `health` check can then look at the app itself).
i=0
until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$PORT/" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -ge 300 ] || ! kill -0 "$(cat var/server.pid)" 2>/dev/null; then
    echo "the server did not answer on port $PORT; var/server.log says:" >&2
    tail -n 20 var/server.log >&2
    exit 1
  fi
  sleep 0.1
done
echo "server $(cat var/server.pid) answers on port $PORT"
