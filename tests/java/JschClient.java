// An SFTP client as legacy Java applications embed it: JSch (com.jcraft.jsch), password login,
// then commands read from standard input, one a line:
//   put LOCAL REMOTE | get REMOTE LOCAL | ls DIR | rename FROM TO | rm PATH | mkdir PATH | rmdir PATH
// Prints "connected hostkey=TYPE version=V" once the session is up, one "entry NAME SIZE dir|file"
// line per listed entry, "ok CMD" after each command, and JSch's own log lines on stderr (they
// name the negotiated algorithms). Any failure prints "error: ..." and exits 2; a failure to
// connect exits 3.
//
// Usage: java -cp jsch.jar:DIR JschClient HOST PORT USER PASSWORD

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Logger;
import com.jcraft.jsch.Session;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.Vector;

public class JschClient {
    public static void main(String[] args) throws Exception {
        JSch.setLogger(new Logger() {
            public boolean isEnabled(int level) {
                return level >= Logger.INFO;
            }

            public void log(int level, String message) {
                System.err.println("jsch: " + message);
            }
        });
        JSch jsch = new JSch();
        Session session = jsch.getSession(args[2], args[0], Integer.parseInt(args[1]));
        session.setPassword(args[3]);
        // A test server with a fresh host key: nothing to compare it with.
        session.setConfig("StrictHostKeyChecking", "no");
        session.setConfig("PreferredAuthentications", "password");
        try {
            session.connect(30000);
        } catch (Exception e) {
            System.out.println("error: connect: " + e);
            System.exit(3);
        }
        System.out.println("connected hostkey=" + session.getHostKey().getType()
                + " version=" + JSch.VERSION);
        ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
        sftp.connect(30000);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        String line = null;
        try {
            while ((line = in.readLine()) != null) {
                String[] w = line.trim().split(" ");
                if (w[0].isEmpty()) {
                    continue;
                }
                switch (w[0]) {
                    case "put":
                        sftp.put(w[1], w[2]);
                        break;
                    case "get":
                        sftp.get(w[1], w[2]);
                        break;
                    case "ls":
                        Vector<?> entries = sftp.ls(w[1]);
                        for (Object o : entries) {
                            ChannelSftp.LsEntry e = (ChannelSftp.LsEntry) o;
                            System.out.println("entry " + e.getFilename() + " "
                                    + e.getAttrs().getSize() + " "
                                    + (e.getAttrs().isDir() ? "dir" : "file"));
                        }
                        break;
                    case "rename":
                        sftp.rename(w[1], w[2]);
                        break;
                    case "rm":
                        sftp.rm(w[1]);
                        break;
                    case "mkdir":
                        sftp.mkdir(w[1]);
                        break;
                    case "rmdir":
                        sftp.rmdir(w[1]);
                        break;
                    default:
                        throw new IllegalArgumentException("unknown command " + w[0]);
                }
                System.out.println("ok " + w[0]);
            }
        } catch (Exception e) {
            System.out.println("error: " + line + ": " + e);
            System.exit(2);
        } finally {
            sftp.disconnect();
            session.disconnect();
        }
    }
}
