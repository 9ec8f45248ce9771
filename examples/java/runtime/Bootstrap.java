// A Lambda custom runtime for a Java handler, in the JDK alone: what the managed java21 runtime
// does around `Class::method(InputStream, OutputStream)`, over the Runtime API.
//
// The managed runtime does not need it (set the function's handler to
// orders.Handler::handleRequest). It is here for a provided.al2023 function that brings its own
// JDK, and for local runs; `bootstrap` next to this directory starts it.
// https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;

public final class Bootstrap {
    private static final String API =
            "http://" + System.getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime";
    // HTTP/1.1: the client would otherwise ask the Runtime API for an upgrade to HTTP/2.
    private static final HttpClient HTTP =
            HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

    /** The handler's method, bound to its instance (null for a static method). */
    private static final class Target {
        final Method method;
        final Object instance;

        Target(Method method, Object instance) {
            this.method = method;
            this.instance = instance;
        }
    }

    public static void main(String[] args) throws Exception {
        Target target;
        try {
            target = load(System.getenv().getOrDefault("_HANDLER", ""));
        } catch (Throwable e) {
            Throwable cause = unwrap(e);
            cause.printStackTrace();
            post("/init/error", errorBody(cause), "Unhandled");
            System.exit(1);
            return;
        }
        while (true) {
            // No timeout: `next` waits as long as no invocation comes.
            HttpResponse<byte[]> next = HTTP.send(
                    HttpRequest.newBuilder(URI.create(API + "/invocation/next")).GET().build(),
                    HttpResponse.BodyHandlers.ofByteArray());
            String id = next.headers().firstValue("Lambda-Runtime-Aws-Request-Id")
                    .orElseThrow(() -> new IllegalStateException("no request id from the Runtime API"));
            ByteArrayOutputStream output = new ByteArrayOutputStream();
            try {
                target.method.invoke(target.instance, new ByteArrayInputStream(next.body()), output);
            } catch (Throwable e) {
                Throwable cause = unwrap(e);
                cause.printStackTrace();
                post("/invocation/" + id + "/error", errorBody(cause), "Unhandled");
                continue;
            }
            byte[] answer = output.size() == 0
                    ? "null".getBytes(StandardCharsets.UTF_8)
                    : output.toByteArray();
            post("/invocation/" + id + "/response", answer, null);
        }
    }

    // _HANDLER is "package.Class::method", as for the managed runtime. Loading the class runs its
    // static initializers, here in Init as there.
    private static Target load(String handler) throws Exception {
        int colons = handler.lastIndexOf("::");
        if (colons <= 0 || colons + 2 == handler.length()) {
            throw new IllegalArgumentException(
                    "the handler must be Class::method, not \"" + handler + "\"");
        }
        String methodName = handler.substring(colons + 2);
        Class<?> type = Class.forName(handler.substring(0, colons), true,
                Bootstrap.class.getClassLoader());
        Method method;
        try {
            method = type.getMethod(methodName, InputStream.class, OutputStream.class);
        } catch (NoSuchMethodException e) {
            throw new NoSuchMethodException("no public " + methodName
                    + "(InputStream, OutputStream) on " + type.getName());
        }
        Object instance = Modifier.isStatic(method.getModifiers())
                ? null
                : type.getConstructor().newInstance();
        return new Target(method, instance);
    }

    private static Throwable unwrap(Throwable e) {
        while ((e instanceof InvocationTargetException || e instanceof ExceptionInInitializerError)
                && e.getCause() != null) {
            e = e.getCause();
        }
        return e;
    }

    private static void post(String path, byte[] body, String errorType) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(API + path))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        if (errorType != null) request.header("Lambda-Runtime-Function-Error-Type", errorType);
        HTTP.send(request.build(), HttpResponse.BodyHandlers.discarding());
    }

    private static byte[] errorBody(Throwable e) {
        StringBuilder json = new StringBuilder("{\"errorMessage\":");
        quote(e.getMessage() == null ? e.toString() : e.getMessage(), json);
        json.append(",\"errorType\":");
        quote(e.getClass().getName(), json);
        json.append(",\"stackTrace\":[");
        StackTraceElement[] frames = e.getStackTrace();
        for (int i = 0; i < frames.length; i++) {
            if (i > 0) json.append(',');
            quote(frames[i].toString(), json);
        }
        return json.append("]}").toString().getBytes(StandardCharsets.UTF_8);
    }

    private static void quote(String s, StringBuilder json) {
        json.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                json.append('\\').append(c);
            } else if (c < 0x20) {
                json.append(String.format("\\u%04x", (int) c));
            } else {
                json.append(c);
            }
        }
        json.append('"');
    }
}
