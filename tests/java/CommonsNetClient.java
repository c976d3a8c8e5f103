// An FTP client as legacy Java applications embed it: Apache Commons Net (FTPClient, or
// FTPSClient with explicit AUTH TLS and PROT P), passive mode, binary type, then commands read
// from standard input, one a line:
//   put LOCAL REMOTE | get REMOTE LOCAL | getfrom OFFSET REMOTE LOCAL | append LOCAL REMOTE
//   ls DIR | rename FROM TO | delete PATH | mkdir PATH | rmdir PATH | mfmt YYYYMMDDHHMMSS PATH
// `ls` uses listFiles() and so Commons Net's default LIST parser (Unix), which is what
// applications parse: one "entry NAME SIZE dir|file|link|unknown YYYY-MM-DD" line per entry.
// Prints "connected secure=BOOL" after login, "ok CMD REPLY" after each command; a refused
// command prints "error: CMD: REPLY" and exits 2; a refused login exits 3.
//
// Usage: java -cp commons-net.jar:DIR CommonsNetClient plain|ftps HOST PORT USER PASSWORD

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.security.cert.X509Certificate;
import java.text.SimpleDateFormat;
import javax.net.ssl.TrustManager;
import javax.net.ssl.X509TrustManager;
import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPClient;
import org.apache.commons.net.ftp.FTPFile;
import org.apache.commons.net.ftp.FTPSClient;

public class CommonsNetClient {
    public static void main(String[] args) throws Exception {
        boolean ftps = args[0].equals("ftps");
        FTPClient ftp;
        if (ftps) {
            FTPSClient s = new FTPSClient("TLS", false);
            // The test server's certificate is self-signed and made for this run only.
            s.setTrustManager(new X509TrustManager() {
                public void checkClientTrusted(X509Certificate[] c, String a) {}

                public void checkServerTrusted(X509Certificate[] c, String a) {}

                public X509Certificate[] getAcceptedIssuers() {
                    return new X509Certificate[0];
                }
            });
            ftp = s;
        } else {
            ftp = new FTPClient();
        }
        ftp.setConnectTimeout(30000);
        ftp.setDefaultTimeout(60000);
        ftp.connect(args[1], Integer.parseInt(args[2]));
        if (!ftp.login(args[3], args[4])) {
            System.out.println("error: login: " + ftp.getReplyString().trim());
            System.exit(3);
        }
        if (ftps) {
            FTPSClient s = (FTPSClient) ftp;
            s.execPBSZ(0);
            s.execPROT("P");
            check(ftp, "PROT P");
        }
        ftp.enterLocalPassiveMode();
        ftp.setFileType(FTP.BINARY_FILE_TYPE);
        System.out.println("connected secure=" + ftps);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            if (w[0].isEmpty()) {
                continue;
            }
            boolean ok;
            switch (w[0]) {
                case "put":
                    try (InputStream f = new FileInputStream(w[1])) {
                        ok = ftp.storeFile(w[2], f);
                    }
                    break;
                case "append":
                    try (InputStream f = new FileInputStream(w[1])) {
                        ok = ftp.appendFile(w[2], f);
                    }
                    break;
                case "get":
                    try (OutputStream f = new FileOutputStream(w[2])) {
                        ok = ftp.retrieveFile(w[1], f);
                    }
                    break;
                case "getfrom":
                    ftp.setRestartOffset(Long.parseLong(w[1]));
                    try (OutputStream f = new FileOutputStream(w[3])) {
                        ok = ftp.retrieveFile(w[2], f);
                    }
                    break;
                case "ls":
                    FTPFile[] files = ftp.listFiles(w[1]);
                    ok = positive(ftp);
                    for (FTPFile f : files) {
                        String type = f.isDirectory() ? "dir"
                                : f.isFile() ? "file"
                                : f.isSymbolicLink() ? "link" : "unknown";
                        String when = "none";
                        if (f.getTimestamp() != null) {
                            SimpleDateFormat day = new SimpleDateFormat("yyyy-MM-dd");
                            day.setTimeZone(f.getTimestamp().getTimeZone());
                            when = day.format(f.getTimestamp().getTime());
                        }
                        System.out.println("entry " + f.getName() + " " + f.getSize() + " " + type
                                + " " + when);
                    }
                    break;
                case "mfmt":
                    ok = ftp.setModificationTime(w[2], w[1]);
                    break;
                case "rename":
                    ok = ftp.rename(w[1], w[2]);
                    break;
                case "delete":
                    ok = ftp.deleteFile(w[1]);
                    break;
                case "mkdir":
                    ok = ftp.makeDirectory(w[1]);
                    break;
                case "rmdir":
                    ok = ftp.removeDirectory(w[1]);
                    break;
                default:
                    throw new IllegalArgumentException("unknown command " + w[0]);
            }
            if (!ok) {
                System.out.println("error: " + line + ": " + ftp.getReplyString().trim());
                System.exit(2);
            }
            System.out.println("ok " + w[0] + " " + ftp.getReplyString().trim());
        }
        ftp.logout();
        ftp.disconnect();
    }

    static boolean positive(FTPClient ftp) {
        return org.apache.commons.net.ftp.FTPReply.isPositiveCompletion(ftp.getReplyCode());
    }

    static void check(FTPClient ftp, String what) {
        if (!positive(ftp)) {
            System.out.println("error: " + what + ": " + ftp.getReplyString().trim());
            System.exit(2);
        }
    }
}
