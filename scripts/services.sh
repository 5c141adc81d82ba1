#!/usr/bin/env bash
# Starts the servers the tests talk to, when they are not already running:
# MariaDB (127.0.0.1:3306, root with an empty password), Redis (127.0.0.1:6379) and the
# tansu Kafka broker (127.0.0.1:9092, in-memory storage). Idempotent.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 150); do
    if port_open "$port"; then return 0; fi
    sleep 0.2
  done
  echo "services: $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

if ! port_open 3306; then
  echo "services: starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306 MariaDB
fi
# The tests log in as root over TCP with an empty password; a fresh Debian install only
# allows root over the socket.
if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  echo "services: allowing root@127.0.0.1 with an empty password"
  mariadb -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; \
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
fi

if ! port_open 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
fi

if ! port_open 9092; then
  tansu_bin=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  if [ -x "$tansu_bin" ]; then
    echo "services: starting tansu"
    nohup "$tansu_bin" broker --storage-engine memory://tansu/ \
      --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      >/tmp/tansu.log 2>&1 &
    wait_port 9092 tansu
  else
    echo "services: tansu is not installed (scripts/install-deps.sh installs it)" >&2
  fi
fi
echo "services: MariaDB, Redis and Kafka (tansu) are up"
