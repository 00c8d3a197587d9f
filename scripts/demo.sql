-- The demo table: scripts/demo-stream.sh and the compose demo workload
-- (docker/demo/workload.sh) create it before writing to it.
CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, name text NOT NULL, age int, updated_at timestamptz DEFAULT now());
