-- The driver checklist for psql (libpq, the simple query protocol), as far as a script goes;
-- psql's cancel (Ctrl-C) is checked by the test that runs this script.
--
-- Run with `psql -X -q -A -t -v ON_ERROR_STOP=1 -f psql_check.sql` and the libpq environment
-- (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD). Prints one line per check; a failed check
-- prints FAIL and the script goes on, an unexpected error stops it with a non-zero status.

SELECT 'drv_psql_' || substr(md5(random()::text || clock_timestamp()::text), 1, 12) AS t \gset
SELECT :'t' || '_v_key' AS t_key, :'t' || '_copy' AS t_copy, :'t' || '_sp' AS sp, :'t' || '_ch' AS ch \gset
CREATE TABLE :"t" (id int PRIMARY KEY, v text, CONSTRAINT :"t_key" UNIQUE (v));

-- Values quoted by psql itself as literals of each type.
\set v_text 'héllo ''quoted'''
\set v_bytes '\\x0001feff'
SELECT 7::int4 = 7 AND (2^40 + 1)::int8 = 1099511627777
   AND :'v_text'::text = E'h\u00e9llo ''quoted'''
   AND '12345.6789'::numeric = 12345.6789 AND 'true'::bool
   AND '2024-02-29 12:34:56.789+00'::timestamptz = '2024-02-29 13:34:56.789+01'
   AND :'v_bytes'::bytea = '\x0001feff'::bytea AND length(:'v_bytes'::bytea) = 4
   AND '12345678-1234-5678-1234-567812345678'::uuid::text = '12345678-1234-5678-1234-567812345678'
   AND '{"b": "x", "a": [1, 2, null]}'::jsonb = '{"a": [1, 2, null], "b": "x"}'::jsonb
   AND NULL::text IS NULL AS ok \gset
\if :ok
\echo 'ok   psql: types'
\else
\echo 'FAIL psql: types'
\endif

INSERT INTO :"t" VALUES (1, 'one');
\set ON_ERROR_STOP 0
INSERT INTO :"t" VALUES (2, 'one');
\set ON_ERROR_STOP 1
SELECT :'SQLSTATE' = '23505' AND strpos(:'LAST_ERROR_MESSAGE', :'t_key') > 0 AS ok \gset
\if :ok
\echo 'ok   psql: unique violation 23505'
\else
\echo 'FAIL psql: unique violation 23505:' :SQLSTATE :LAST_ERROR_MESSAGE
\endif

BEGIN;
INSERT INTO :"t" VALUES (10, 'committed');
COMMIT;
BEGIN;
INSERT INTO :"t" VALUES (11, 'rolled back');
ROLLBACK;
SELECT array_agg(id ORDER BY id) = '{10}' AS ok FROM :"t" WHERE id >= 10 \gset
\if :ok
\echo 'ok   psql: commit and rollback'
\else
\echo 'FAIL psql: commit and rollback'
\endif

CREATE TEMP TABLE reused (v int8);
PREPARE reuse(int8) AS INSERT INTO reused VALUES ($1 * 2);
SELECT format('EXECUTE reuse(%s)', i) FROM generate_series(0, 99) AS i \gexec
SELECT (SELECT sum(v) FROM reused) = 9900
   AND (SELECT count(*) FROM pg_prepared_statements WHERE name = 'reuse') = 1 AS ok \gset
\if :ok
\echo 'ok   psql: prepared statement reused 100 times'
\else
\echo 'FAIL psql: prepared statement reused 100 times'
\endif
DEALLOCATE reuse;

-- With FETCH_COUNT psql reads through a cursor, 1000 rows at a time.
\set FETCH_COUNT 1000
SELECT i FROM generate_series(1, 100000) AS i \g | awk '{ s += $1 } END { print ((NR == 100000 && s == 5000050000) ? "ok   " : "FAIL ") "psql: 100000 rows streamed" }'
\unset FETCH_COUNT

CREATE TABLE :"t_copy" (id int, name text);
COPY :"t_copy" FROM STDIN;
1	one
2	two\ttab
3	\N
\.
COPY (SELECT * FROM :"t_copy" ORDER BY id) TO STDOUT \g | awk 'NR == 2 && $0 == "2\ttwo\\ttab" { two = 1 } NR == 3 && $0 == "3\t\\N" { three = 1 } END { print (NR == 3 && two && three ? "ok   " : "FAIL ") "psql: COPY FROM STDIN and TO STDOUT" }'

-- psql prints a notification after the command during which it arrived; the test looks for
-- both lines.
LISTEN :"ch";
NOTIFY :"ch", 'from self';
SELECT pg_notify(:'ch', 'from self again') \g /dev/null
UNLISTEN :"ch";

CREATE SCHEMA :"sp";
CREATE TABLE :"sp".only_here (v int);
INSERT INTO :"sp".only_here VALUES (42);
SET search_path TO :"sp", public;
SELECT v = 42 AS ok1 FROM only_here \gset
SELECT :'ok1'::bool AND v = 42 AND current_setting('search_path') = :'sp' || ', public' AS ok
  FROM only_here \gset
\if :ok
\echo 'ok   psql: SET search_path held'
\else
\echo 'FAIL psql: SET search_path held'
\endif
RESET search_path;

DROP SCHEMA :"sp" CASCADE;
DROP TABLE :"t", :"t_copy";
