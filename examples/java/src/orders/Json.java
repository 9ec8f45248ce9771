package orders;

import java.math.BigDecimal;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The JSON this function reads and writes, in the JDK alone: events are one flat object (strings,
 * numbers, true, false, null), answers are objects of those and of lists of them. Anything else
 * (a nested object in an event, trailing bytes) is refused with the position, never guessed at.
 */
final class Json {
    private final String text;
    private int at;

    private Json(String text) {
        this.text = text;
    }

    /**
     * A flat object's members in order. Integral numbers come back as Long, others as BigDecimal.
     */
    static Map<String, Object> parseObject(String text) {
        Json p = new Json(text);
        p.space();
        Map<String, Object> members = new LinkedHashMap<>();
        p.expect('{');
        p.space();
        if (p.peek() == '}') {
            p.at++;
        } else {
            while (true) {
                p.space();
                String name = p.string();
                p.space();
                p.expect(':');
                p.space();
                members.put(name, p.value());
                p.space();
                char c = p.next();
                if (c == '}') break;
                if (c != ',') throw p.error("',' or '}'");
            }
        }
        p.space();
        if (p.at != text.length()) throw p.error("the end");
        return members;
    }

    /** {@code value} as JSON: a Map, a List, a String, a Number, a Boolean or null. */
    static String write(Object value) {
        StringBuilder out = new StringBuilder();
        write(value, out);
        return out.toString();
    }

    private static void write(Object value, StringBuilder out) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof String) {
            quote((String) value, out);
        } else if (value instanceof Boolean || value instanceof Long || value instanceof Integer
                || value instanceof Short || value instanceof BigDecimal) {
            out.append(value);
        } else if (value instanceof Map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                if (!first) out.append(',');
                first = false;
                quote(String.valueOf(e.getKey()), out);
                out.append(':');
                write(e.getValue(), out);
            }
            out.append('}');
        } else if (value instanceof List) {
            out.append('[');
            boolean first = true;
            for (Object item : (List<?>) value) {
                if (!first) out.append(',');
                first = false;
                write(item, out);
            }
            out.append(']');
        } else {
            // Doubles (NaN, Infinity) and other types have no faithful JSON form here.
            throw new IllegalArgumentException("no JSON for a " + value.getClass().getName());
        }
    }

    private static void quote(String s, StringBuilder out) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }

    private Object value() {
        char c = peek();
        if (c == '"') return string();
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        if (text.startsWith("true", at)) {
            at += 4;
            return Boolean.TRUE;
        }
        if (text.startsWith("false", at)) {
            at += 5;
            return Boolean.FALSE;
        }
        if (text.startsWith("null", at)) {
            at += 4;
            return null;
        }
        throw error("a string, a number, true, false or null (events are flat objects)");
    }

    private String string() {
        expect('"');
        StringBuilder s = new StringBuilder();
        while (true) {
            char c = next();
            if (c == '"') return s.toString();
            if (c < 0x20) throw error("no control character in a string");
            if (c != '\\') {
                s.append(c);
                continue;
            }
            char e = next();
            switch (e) {
                case '"': s.append('"'); break;
                case '\\': s.append('\\'); break;
                case '/': s.append('/'); break;
                case 'b': s.append('\b'); break;
                case 'f': s.append('\f'); break;
                case 'n': s.append('\n'); break;
                case 'r': s.append('\r'); break;
                case 't': s.append('\t'); break;
                case 'u':
                    if (at + 4 > text.length()) throw error("four hex digits");
                    try {
                        // A surrogate pair arrives as two escapes, each appended as it is.
                        s.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                    } catch (NumberFormatException x) {
                        throw error("four hex digits");
                    }
                    at += 4;
                    break;
                default:
                    throw error("an escape");
            }
        }
    }

    private Object number() {
        int start = at;
        if (peek() == '-') at++;
        boolean integral = true;
        while (at < text.length()) {
            char c = text.charAt(at);
            if (c >= '0' && c <= '9') {
                at++;
            } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                integral = false;
                at++;
            } else {
                break;
            }
        }
        String n = text.substring(start, at);
        try {
            BigDecimal d = new BigDecimal(n);
            if (integral) return d.longValueExact();
            return d;
        } catch (NumberFormatException | ArithmeticException x) {
            at = start;
            throw error("a number that fits");
        }
    }

    private char peek() {
        if (at >= text.length()) throw error("more input");
        return text.charAt(at);
    }

    private char next() {
        char c = peek();
        at++;
        return c;
    }

    private void expect(char c) {
        if (next() != c) {
            at--;
            throw error("'" + c + "'");
        }
    }

    private void space() {
        while (at < text.length() && " \t\r\n".indexOf(text.charAt(at)) >= 0) at++;
    }

    private IllegalArgumentException error(String expected) {
        return new IllegalArgumentException("JSON: expected " + expected + " at offset " + at);
    }
}
