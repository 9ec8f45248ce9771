// The driver checklist for pgJDBC, over TCP (pgJDBC has no Unix sockets of its own).
//
// Connection from the libpq environment: PGHOST, PGPORT, PGUSER, PGDATABASE, and PGPASSWORD,
// PGSSLMODE, PGSSLROOTCERT when set. Prints one line per check and exits 1 if any failed.
// Runs as a single source file: `java -cp postgresql.jar PgJdbcCheck.java`.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;

public class PgJdbcCheck {
    static final String RUN = UUID.randomUUID().toString().replace("-", "").substring(0, 12);
    static final int ROWS = 100_000;
    static final List<String> FAILED = new ArrayList<>();

    interface Check {
        void run() throws Exception;
    }

    static void expect(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "localhost") + ":" + env("PGPORT", "5432")
                + "/" + env("PGDATABASE", env("PGUSER", "postgres"));
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        String password = System.getenv("PGPASSWORD");
        if (password != null) p.setProperty("password", password);
        p.setProperty("sslmode", env("PGSSLMODE", "prefer"));
        String root = System.getenv("PGSSLROOTCERT");
        if (root != null) p.setProperty("sslrootcert", root);
        return DriverManager.getConnection(url, p);
    }

    static void waitUntilSleeping(Connection watch, int pid) throws Exception {
        try (PreparedStatement ps = watch.prepareStatement("SELECT wait_event FROM pg_stat_activity WHERE pid = ?")) {
            ps.setInt(1, pid);
            for (int i = 0; i < 2000; i++) {
                try (ResultSet rs = ps.executeQuery()) {
                    if (rs.next() && "PgSleep".equals(rs.getString(1))) return;
                }
                Thread.sleep(5);
            }
        }
        throw new AssertionError("backend " + pid + " never reached pg_sleep");
    }

    public static void main(String[] args) throws Exception {
        Connection conn = connect();
        Connection other = connect();
        String t = "drv_pgjdbc_" + RUN;
        try (Statement st = conn.createStatement()) {
            st.execute("CREATE TABLE " + t + " (id int PRIMARY KEY, v text, CONSTRAINT " + t + "_v_key UNIQUE (v))");
        }

        Object[][] checks = {
            {"types, text then binary", (Check) () -> {
                OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 12, 34, 56, 789_000_000, ZoneOffset.UTC);
                byte[] bytes = {0, 1, (byte) 0xfe, (byte) 0xff};
                UUID id = UUID.fromString("12345678-1234-5678-1234-567812345678");
                try (PreparedStatement ps = conn.prepareStatement(
                        "SELECT ?::int4, ?::int8, ?::text, ?::numeric, ?::bool, ?::timestamptz, ?::bytea, ?::uuid, ?::jsonb, ?::text")) {
                    // Past prepareThreshold (5) the statement is prepared on the server and
                    // results come in binary where pgJDBC reads it.
                    for (int round = 0; round < 7; round++) {
                        ps.setInt(1, 7);
                        ps.setLong(2, (1L << 40) + 1);
                        ps.setString(3, "héllo 'quoted'");
                        ps.setBigDecimal(4, new BigDecimal("12345.6789"));
                        ps.setBoolean(5, true);
                        ps.setObject(6, ts);
                        ps.setBytes(7, bytes);
                        ps.setObject(8, id);
                        ps.setString(9, "{\"a\": [1, 2, null], \"b\": \"x\"}");
                        ps.setNull(10, java.sql.Types.VARCHAR);
                        try (ResultSet rs = ps.executeQuery()) {
                            expect(rs.next(), "no row");
                            expect(rs.getInt(1) == 7 && rs.getLong(2) == (1L << 40) + 1, "integers");
                            expect("héllo 'quoted'".equals(rs.getString(3)), "text " + rs.getString(3));
                            expect(new BigDecimal("12345.6789").equals(rs.getBigDecimal(4)), "numeric " + rs.getBigDecimal(4));
                            expect(rs.getBoolean(5), "bool");
                            expect(ts.isEqual(rs.getObject(6, OffsetDateTime.class)), "timestamptz " + rs.getObject(6, OffsetDateTime.class));
                            expect(Arrays.equals(bytes, rs.getBytes(7)), "bytea");
                            expect(id.equals(rs.getObject(8, UUID.class)), "uuid");
                            expect("{\"a\": [1, 2, null], \"b\": \"x\"}".equals(rs.getString(9)), "jsonb " + rs.getString(9));
                            expect(rs.getString(10) == null && rs.wasNull(), "null");
                        }
                    }
                }
            }},
            {"unique violation 23505", (Check) () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("INSERT INTO " + t + " VALUES (1, 'one')");
                }
                try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                    ps.setInt(1, 2);
                    ps.setString(2, "one");
                    ps.executeUpdate();
                } catch (PSQLException e) {
                    expect("23505".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
                    String constraint = e.getServerErrorMessage().getConstraint();
                    expect((t + "_v_key").equals(constraint), "constraint " + constraint);
                    return;
                }
                throw new AssertionError("no error");
            }},
            {"commit and rollback", (Check) () -> {
                conn.setAutoCommit(false);
                try (Statement st = conn.createStatement()) {
                    st.execute("INSERT INTO " + t + " VALUES (10, 'committed')");
                    conn.commit();
                    st.execute("INSERT INTO " + t + " VALUES (11, 'rolled back')");
                    conn.rollback();
                } finally {
                    conn.setAutoCommit(true);
                }
                List<Integer> ids = new ArrayList<>();
                try (Statement st = conn.createStatement();
                     ResultSet rs = st.executeQuery("SELECT id FROM " + t + " WHERE id >= 10 ORDER BY id")) {
                    while (rs.next()) ids.add(rs.getInt(1));
                }
                expect(ids.equals(List.of(10)), "ids " + ids);
            }},
            {"prepared statement reused 100 times", (Check) () -> {
                long total = 0;
                try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int8 * 2 AS reuse_probe")) {
                    for (int i = 0; i < 100; i++) {
                        ps.setLong(1, i);
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            total += rs.getLong(1);
                        }
                    }
                    expect(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "not server-prepared");
                }
                expect(total == 9900, "sum " + total);
                try (PreparedStatement ps = conn.prepareStatement(
                        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE ?")) {
                    ps.setString(1, "%reuse_probe%");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        expect(rs.getLong(1) == 1, rs.getLong(1) + " server-side statements for the reused query");
                    }
                }
            }},
            {"100000 rows streamed", (Check) () -> {
                // With autocommit off and a fetch size, a portal read 1000 rows per Execute.
                conn.setAutoCommit(false);
                long n = 0, sum = 0;
                try (PreparedStatement ps = conn.prepareStatement("SELECT i FROM generate_series(1, ?) AS i")) {
                    ps.setFetchSize(1000);
                    ps.setInt(1, ROWS);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            n++;
                            sum += rs.getInt(1);
                        }
                    }
                    conn.commit();
                } finally {
                    conn.setAutoCommit(true);
                }
                expect(n == ROWS && sum == (long) ROWS * (ROWS + 1) / 2, n + " rows, sum " + sum);
            }},
            {"COPY FROM STDIN and TO STDOUT", (Check) () -> {
                String c = "drv_pgjdbc_copy_" + RUN;
                try (Statement st = conn.createStatement()) {
                    st.execute("CREATE TABLE " + c + " (id int, name text)");
                }
                StringBuilder in = new StringBuilder();
                for (int i = 0; i < 1000; i++) in.append(i).append("\tn").append(i).append('\n');
                CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
                long copied = copy.copyIn("COPY " + c + " FROM STDIN", new StringReader(in.toString()));
                expect(copied == 1000, "copied " + copied);
                StringWriter out = new StringWriter();
                long sent = copy.copyOut("COPY (SELECT * FROM " + c + " ORDER BY id) TO STDOUT", out);
                expect(sent == 1000 && out.toString().equals(in.toString()), "copied out " + sent);
            }},
            {"LISTEN/NOTIFY", (Check) () -> {
                String ch = "ch_" + RUN;
                try (Statement st = conn.createStatement()) {
                    st.execute("LISTEN " + ch);
                }
                try (Statement st = other.createStatement()) {
                    st.execute("NOTIFY " + ch + ", 'from other'");
                }
                PGNotification[] got = conn.unwrap(PGConnection.class).getNotifications(10_000);
                expect(got != null && got.length == 1, "notifications " + Arrays.toString(got));
                expect(ch.equals(got[0].getName()) && "from other".equals(got[0].getParameter()), "notification " + got[0].getParameter());
                try (Statement st = conn.createStatement()) {
                    st.execute("UNLISTEN " + ch);
                }
            }},
            {"SET search_path held", (Check) () -> {
                String s = "sp_" + RUN;
                try (Statement st = conn.createStatement()) {
                    st.execute("CREATE SCHEMA " + s + "; CREATE TABLE " + s + ".only_here (v int); INSERT INTO " + s + ".only_here VALUES (42)");
                    st.execute("SET search_path TO " + s + ", public");
                    for (int i = 0; i < 3; i++) {
                        try (ResultSet rs = st.executeQuery("SELECT v FROM only_here")) {
                            expect(rs.next() && rs.getInt(1) == 42, "value");
                        }
                    }
                    try (ResultSet rs = st.executeQuery("SHOW search_path")) {
                        rs.next();
                        expect((s + ", public").equals(rs.getString(1)), "search_path " + rs.getString(1));
                    }
                    st.execute("RESET search_path");
                    st.execute("DROP SCHEMA " + s + " CASCADE");
                }
            }},
            // Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its
            // process group), and on a busy machine the second SIGINT can land on the statement
            // after the cancelled one, a COPY waiting for data above all.
            {"cancel of pg_sleep(30) 57014", (Check) () -> {
                // The server's own pid: behind a pooler the key the driver holds is the pooler's.
                int pid;
                try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT pg_backend_pid()")) {
                    rs.next();
                    pid = rs.getInt(1);
                }
                try (Statement st = conn.createStatement()) {
                    CompletableFuture<SQLException> running = CompletableFuture.supplyAsync(() -> {
                        try {
                            st.execute("SELECT pg_sleep(30)");
                            return null;
                        } catch (SQLException e) {
                            return e;
                        }
                    });
                    waitUntilSleeping(other, pid);
                    st.cancel();
                    SQLException e = running.get(60, TimeUnit.SECONDS);
                    expect(e != null && "57014".equals(e.getSQLState()), "got " + e);
                }
                try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT pg_backend_pid()")) {
                    rs.next();
                    expect(rs.getInt(1) == pid, "another session after cancel");
                }
            }},
        };

        for (Object[] check : checks) {
            String name = (String) check[0];
            try {
                ((Check) check[1]).run();
                System.out.println("ok   pgjdbc: " + name);
            } catch (Throwable e) {
                FAILED.add(name);
                System.out.println("FAIL pgjdbc: " + name + ": " + e);
            }
        }
        try (Statement st = other.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + t + ", drv_pgjdbc_copy_" + RUN);
        }
        conn.close();
        other.close();
        if (!FAILED.isEmpty()) {
            System.out.println(FAILED.size() + " check(s) failed");
            System.exit(1);
        }
    }
}
