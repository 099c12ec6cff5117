// The cookbook's Java client: PgJDBC through a HikariCP pool of one connection, against
// PostgreSQL, with the settings written as a JDBC URL's parameters.
//
//   java -cp CLASSES:JARS Client busy|idle defaults|recommended
//
// Busy: `SELECT 1` every second; idle: a query whose answer takes an hour (pg_sleep), the
// idle read of ruby-pg issue 509, as cookbook/clients/psycopg_client.py. The service is
// TCPECHO_LAB_HOST and TCPECHO_LAB_PORT; the values are cookbook/clients/common.py's.
//
// Compiled (cookbook/run.py's build_java_client), not run as `java Client.java`: PgJDBC finds
// its socketFactory with Class.forName, which cannot see the source launcher's in-memory
// classes.
//
// Java has no TCP_USER_TIMEOUT (jdk.net.ExtendedSocketOptions has TCP_KEEPIDLE,
// TCP_KEEPINTERVAL and TCP_KEEPCOUNT only): a request in flight is bounded by PgJDBC's
// socketTimeout (SO_TIMEOUT on each read), not the kernel. PgJDBC's tcpKeepAlive is a boolean
// (the kernel's 7200/75/9 s); KeepaliveSocketFactory below gives the times. Nested here, its
// name on the URL is Client$KeepaliveSocketFactory; a user's would be a class of their own
// (com.example.KeepaliveSocketFactory), as the recipe writes it.
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.IOException;
import java.net.InetAddress;
import java.net.Socket;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Map;
import java.util.concurrent.Executors;
import javax.net.SocketFactory;
import jdk.net.ExtendedSocketOptions;

public final class Client {
    static final int KEEPALIVE_IDLE_S = 10; // common.KEEPALIVE_IDLE_S
    static final int KEEPALIVE_INTERVAL_S = 1; // common.KEEPALIVE_INTERVAL_S
    static final int KEEPALIVE_COUNT = 3; // common.KEEPALIVE_COUNT
    static final int SOCKET_TIMEOUT_S = 5; // common.USER_TIMEOUT_MS: a request in flight
    static final long REQUEST_INTERVAL_MS = 1000; // common.REQUEST_INTERVAL_S
    // socketTimeout bounds every read, a slow query's too: the hour-long one gets its own
    // network timeout above its hour, or the 5 s would end it (keepalive ends a dead wait).
    static final int LONG_QUERY_TIMEOUT_MS = 3700 * 1000;

    static final Map<String, String> SETTINGS = Map.of(
            "defaults", "",
            "recommended", "tcpKeepAlive=true&socketTimeout=" + SOCKET_TIMEOUT_S
                    + "&socketFactory=Client$KeepaliveSocketFactory&socketFactoryArg="
                    + KEEPALIVE_IDLE_S + "," + KEEPALIVE_INTERVAL_S + "," + KEEPALIVE_COUNT);

    /** Sockets with TCP_KEEPIDLE, TCP_KEEPINTERVAL and TCP_KEEPCOUNT set before PgJDBC
     * connects them; the argument is "IDLE,INTERVAL,COUNT" in seconds. SO_KEEPALIVE itself is
     * PgJDBC's: it calls setKeepAlive(tcpKeepAlive) once connected, false unless given. */
    public static final class KeepaliveSocketFactory extends SocketFactory {
        private final int idle;
        private final int interval;
        private final int count;

        public KeepaliveSocketFactory(String times) {
            String[] parts = times.split(",");
            if (parts.length != 3) {
                throw new IllegalArgumentException("socketFactoryArg: IDLE,INTERVAL,COUNT");
            }
            idle = Integer.parseInt(parts[0].trim());
            interval = Integer.parseInt(parts[1].trim());
            count = Integer.parseInt(parts[2].trim());
        }

        @Override
        public Socket createSocket() throws IOException {
            Socket socket = new Socket();
            socket.setKeepAlive(true);
            socket.setOption(ExtendedSocketOptions.TCP_KEEPIDLE, idle);
            socket.setOption(ExtendedSocketOptions.TCP_KEEPINTERVAL, interval);
            socket.setOption(ExtendedSocketOptions.TCP_KEEPCOUNT, count);
            return socket;
        }

        // PgJDBC calls createSocket() and connects it itself; these are SocketFactory's.
        @Override
        public Socket createSocket(String host, int port) throws IOException {
            throw new UnsupportedOperationException("PgJDBC connects createSocket()'s socket");
        }

        @Override
        public Socket createSocket(String host, int port, InetAddress local, int localPort)
                throws IOException {
            throw new UnsupportedOperationException("PgJDBC connects createSocket()'s socket");
        }

        @Override
        public Socket createSocket(InetAddress host, int port) throws IOException {
            throw new UnsupportedOperationException("PgJDBC connects createSocket()'s socket");
        }

        @Override
        public Socket createSocket(InetAddress host, int port, InetAddress local, int localPort)
                throws IOException {
            throw new UnsupportedOperationException("PgJDBC connects createSocket()'s socket");
        }
    }

    static HikariDataSource pool(String parameters) {
        String host = System.getenv().getOrDefault("TCPECHO_LAB_HOST", "127.0.0.1");
        String port = System.getenv().getOrDefault("TCPECHO_LAB_PORT", "5432");
        HikariConfig config = new HikariConfig();
        String url = "jdbc:postgresql://" + host + ":" + port + "/postgres";
        config.setJdbcUrl(parameters.isEmpty() ? url : url + "?" + parameters);
        config.setUsername("postgres");
        config.setMaximumPoolSize(1); // one connection, the one the lab watches
        return new HikariDataSource(config);
    }

    static void idle(HikariDataSource pool) throws SQLException {
        try (Connection connection = pool.getConnection();
                Statement statement = connection.createStatement()) {
            connection.setNetworkTimeout(Executors.newSingleThreadExecutor(), LONG_QUERY_TIMEOUT_MS);
            statement.execute("SELECT pg_sleep(3600)");
        }
    }

    static void busy(HikariDataSource pool) throws SQLException, InterruptedException {
        for (;;) {
            try (Connection connection = pool.getConnection();
                    Statement statement = connection.createStatement()) {
                statement.execute("SELECT 1");
            }
            Thread.sleep(REQUEST_INTERVAL_MS);
        }
    }

    public static void main(String[] args) {
        if (args.length != 2 || !(args[0].equals("busy") || args[0].equals("idle"))
                || !SETTINGS.containsKey(args[1])) {
            System.err.println("usage: Client busy|idle defaults|recommended");
            System.exit(2);
        }
        try (HikariDataSource pool = pool(SETTINGS.get(args[1]))) {
            if (args[0].equals("idle")) {
                idle(pool);
            } else {
                busy(pool);
            }
        } catch (Exception error) {
            System.err.println("connection failed: " + error.getClass().getSimpleName() + ": "
                    + error.getMessage());
            System.exit(1);
        }
        System.exit(0);
    }
}
