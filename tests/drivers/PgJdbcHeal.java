// Healing through warmpool's endpoint (its TCP listener), as pgJDBC sees it: the same two steps
// as asyncpg_heal.py, paused for the test between `PID <n>` (printed) and `GO` (read).
// Connection from the libpq environment: PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.UUID;

public class PgJdbcHeal {
    static final BufferedReader IN = new BufferedReader(new InputStreamReader(System.in));

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "localhost") + ":" + env("PGPORT", "5432")
                + "/" + env("PGDATABASE", "postgres");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        String password = System.getenv("PGPASSWORD");
        if (password != null) p.setProperty("password", password);
        p.setProperty("sslmode", "disable");
        // Server-side prepared statements from the first execution on.
        p.setProperty("prepareThreshold", "1");
        return DriverManager.getConnection(url, p);
    }

    static void pause(int pid) throws Exception {
        System.out.println("PID " + pid);
        System.out.flush();
        String line = IN.readLine();
        if (line == null || !line.trim().equals("GO")) throw new IllegalStateException("no GO from the test");
    }

    static int pid(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT pg_backend_pid()")) {
            r.next();
            return r.getInt(1);
        }
    }

    public static void main(String[] args) throws Exception {
        boolean failed = false;
        String schema = "heal_" + UUID.randomUUID().toString().replace("-", "").substring(0, 12);
        Connection conn = connect();
        try (Statement s = conn.createStatement()) {
            s.execute("CREATE SCHEMA " + schema + "; CREATE TABLE " + schema + ".t (a int); INSERT INTO " + schema + ".t VALUES (42)");
            s.execute("SET search_path TO " + schema + ", public");
        }
        PreparedStatement read = conn.prepareStatement("SELECT a, current_setting('search_path'), pg_backend_pid() FROM t");
        int before;
        try (ResultSet r = read.executeQuery()) {
            r.next();
            before = r.getInt(3);
        }
        pause(before);
        try (ResultSet r = read.executeQuery()) {
            r.next();
            if (r.getInt(1) != 42) throw new AssertionError("a = " + r.getInt(1));
            if (!r.getString(2).equals(schema + ", public")) throw new AssertionError("search_path " + r.getString(2));
            if (r.getInt(3) == before) throw new AssertionError("the same server connection");
            System.out.println("ok   pgjdbc: healed with its SET and prepared statement");
        } catch (Throwable e) {
            failed = true;
            System.out.println("FAIL pgjdbc: heal: " + e);
        }

        Connection other = connect();
        try (Statement s = other.createStatement()) {
            s.execute("CREATE TABLE " + schema + ".tx (a int)");
        }
        other.setAutoCommit(false);
        try (Statement s = other.createStatement()) {
            s.execute("INSERT INTO " + schema + ".tx VALUES (1)");
        }
        pause(pid(other));
        try {
            try {
                other.commit();
                throw new AssertionError("the COMMIT was reported done");
            } catch (SQLException e) {
                // The extension ends the session with FATAL 08006 naming the open transaction;
                // pgJDBC reports it, or the closed connection (08003/08006).
                String state = e.getSQLState();
                if (state == null || !state.startsWith("08")) throw new AssertionError(state + ": " + e);
            }
            try (Statement s = conn.createStatement(); ResultSet r = s.executeQuery("SELECT count(*) FROM " + schema + ".tx")) {
                r.next();
                if (r.getLong(1) != 0) throw new AssertionError(r.getLong(1) + " rows committed");
            }
            System.out.println("ok   pgjdbc: an open transaction ends with 08006 and commits nothing");
        } catch (Throwable e) {
            failed = true;
            System.out.println("FAIL pgjdbc: transaction: " + e);
        }
        conn.close();
        System.exit(failed ? 1 : 0);
    }
}
