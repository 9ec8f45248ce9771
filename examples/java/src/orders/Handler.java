// An orders function for the java21 runtime, on pgJDBC, that reaches PostgreSQL through warmpool's
// endpoint: pgJDBC has no Unix sockets, so the extension serves PostgreSQL's protocol on
// 127.0.0.1:$WARMPOOL_PG_TCP_PORT too, behind SCRAM-SHA-256 with $WARMPOOL_PG_PASSWORD (a secret
// the function and the extension share, not the database's). The function holds no database
// credentials of its own.
//
// The connection is opened at Init (when the runtime loads this class) and used by every
// invocation. Between invocations Lambda freezes the environment; if the server ended the
// connection behind it meanwhile (its idle_session_timeout, a failover), the extension opens a
// new one and restores this session's SETs and prepared statements on it before the next
// statement, so the function sees nothing.
//
// Events ("action" picks one):
// - {"action": "setup"} creates the table.
// - {"action": "create", "customer": "ada", "item": "widget", "qty": 2} inserts an order and
//   counts the customer's orders, in one transaction.
// - {"action": "get", "id": 1} reads an order, with a prepared statement.
// - {"action": "count"} counts the orders.
// - {"action": "backend"} returns the server process id behind the connection, the settings made
//   at Init and the statements prepared on it.

package orders;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public class Handler {
    // Where the extension serves PostgreSQL's protocol, and the database its pool serves: the
    // extension reads the same variables (PGDATABASE configures the extension too).
    private static final String URL = "jdbc:postgresql://127.0.0.1:"
            + required("WARMPOOL_PG_TCP_PORT") + "/" + required("PGDATABASE");

    private static Connection conn;

    // At Init. A failure here is not fatal: the first invocation opens it again and reports why.
    static {
        try {
            conn = connect();
        } catch (SQLException e) {
            System.err.println("cannot connect at Init: " + e.getMessage());
        }
    }

    private static String required(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            throw new IllegalStateException(name + " is not set");
        }
        return value;
    }

    private static Connection connect() throws SQLException {
        // Every parameter is given. The password is the endpoint's, read from the environment
        // the function shares with the extension; the user name is not checked. No TLS on
        // loopback. prepareThreshold=1: a PreparedStatement is parsed on the server as a named
        // statement from its first run, and pgJDBC keeps it per connection and SQL text, so
        // later runs only bind it, by name. Autocommit is JDBC's default: a statement outside an
        // explicit transaction must not leave one open while the environment is frozen, as that
        // would hold the server connection's locks and snapshot.
        Properties p = new Properties();
        p.setProperty("user", "orders");
        p.setProperty("password", required("WARMPOOL_PG_PASSWORD"));
        p.setProperty("sslmode", "disable");
        p.setProperty("prepareThreshold", "1");
        Connection c = DriverManager.getConnection(URL, p);
        try (Statement s = c.createStatement()) {
            s.execute("SET application_name = 'orders-java'");
            s.execute("SET statement_timeout = '5s'");
        } catch (SQLException e) {
            c.close();
            throw e;
        }
        return c;
    }

    // The connection, opened again if it was closed: the extension ends a session that lost its
    // server connection and cannot go on on a new one (one frozen in the middle of a
    // transaction, or while the database refused connections), and pgJDBC closes the connection
    // on that error.
    private static Connection db() throws SQLException {
        if (conn == null || conn.isClosed()) {
            conn = connect();
        }
        return conn;
    }

    // The managed runtime calls this with the event's bytes and takes what it writes as the
    // answer; without a Context parameter the function needs no AWS library.
    public void handleRequest(InputStream input, OutputStream output)
            throws IOException, SQLException {
        Map<String, Object> event =
                Json.parseObject(new String(input.readAllBytes(), StandardCharsets.UTF_8));
        Map<String, Object> answer = handle(event);
        output.write(Json.write(answer).getBytes(StandardCharsets.UTF_8));
    }

    private static Map<String, Object> handle(Map<String, Object> event) throws SQLException {
        Object action = event.get("action");
        if ("setup".equals(action)) {
            try (Statement s = db().createStatement()) {
                s.execute("CREATE TABLE IF NOT EXISTS orders ("
                        + " id bigserial PRIMARY KEY,"
                        + " customer text NOT NULL,"
                        + " item text NOT NULL,"
                        + " qty int NOT NULL CHECK (qty > 0),"
                        + " created_at timestamptz NOT NULL DEFAULT now())");
            }
            return object("ok", true);
        }
        if ("create".equals(action)) {
            Connection c = db();
            c.setAutoCommit(false);
            try {
                long id;
                long count;
                try (PreparedStatement insert = c.prepareStatement(
                        "INSERT INTO orders (customer, item, qty) VALUES (?, ?, ?) RETURNING id")) {
                    insert.setString(1, text(event, "customer"));
                    insert.setString(2, text(event, "item"));
                    insert.setInt(3, Math.toIntExact(number(event, "qty")));
                    try (ResultSet r = insert.executeQuery()) {
                        r.next();
                        id = r.getLong(1);
                    }
                }
                try (PreparedStatement counted = c.prepareStatement(
                        "SELECT count(*) FROM orders WHERE customer = ?")) {
                    counted.setString(1, text(event, "customer"));
                    try (ResultSet r = counted.executeQuery()) {
                        r.next();
                        count = r.getLong(1);
                    }
                }
                c.commit();
                return object("id", id, "customer_orders", count);
            } catch (SQLException | RuntimeException e) {
                try {
                    c.rollback();
                } catch (SQLException lost) {
                    e.addSuppressed(lost);
                }
                throw e;
            } finally {
                if (!c.isClosed()) c.setAutoCommit(true);
            }
        }
        if ("get".equals(action)) {
            long id = number(event, "id");
            // Parsed and planned once per connection (prepareThreshold=1), then run by name.
            try (PreparedStatement s = db().prepareStatement(
                    "SELECT customer, item, qty FROM orders WHERE id = ?")) {
                s.setLong(1, id);
                try (ResultSet r = s.executeQuery()) {
                    if (!r.next()) return object("id", id, "found", false);
                    return object("id", id, "customer", r.getString(1), "item", r.getString(2),
                            "qty", r.getInt(3));
                }
            }
        }
        if ("count".equals(action)) {
            try (Statement s = db().createStatement();
                    ResultSet r = s.executeQuery("SELECT count(*) FROM orders")) {
                r.next();
                return object("orders", r.getLong(1));
            }
        }
        if ("backend".equals(action)) {
            Map<String, Object> answer;
            try (Statement s = db().createStatement();
                    ResultSet r = s.executeQuery("SELECT pg_backend_pid(), "
                            + "current_setting('application_name'), "
                            + "current_setting('statement_timeout')")) {
                r.next();
                answer = object("pid", r.getInt(1), "application_name", r.getString(2),
                        "statement_timeout", r.getString(3));
            }
            List<String> prepared = new ArrayList<>();
            try (Statement s = db().createStatement();
                    ResultSet r = s.executeQuery(
                            "SELECT name FROM pg_prepared_statements ORDER BY name")) {
                while (r.next()) prepared.add(r.getString(1));
            }
            // No request id: the runtime hands it over in a Context, from aws-lambda-java-core.
            answer.put("prepared", prepared);
            return answer;
        }
        throw new IllegalArgumentException("unknown action " + Json.write(action));
    }

    private static String text(Map<String, Object> event, String name) {
        Object v = event.get(name);
        if (!(v instanceof String)) throw new IllegalArgumentException(name + ": not a string");
        return (String) v;
    }

    private static long number(Map<String, Object> event, String name) {
        Object v = event.get(name);
        if (!(v instanceof Long)) throw new IllegalArgumentException(name + ": not an integer");
        return (Long) v;
    }

    private static Map<String, Object> object(Object... namesAndValues) {
        Map<String, Object> o = new LinkedHashMap<>();
        for (int i = 0; i < namesAndValues.length; i += 2) {
            o.put((String) namesAndValues[i], namesAndValues[i + 1]);
        }
        return o;
    }
}
