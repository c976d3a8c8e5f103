# The reference FTP server of protocols/tests/ftp_differential.rs: pyftpdlib (PyPI; installed
# by scripts/install-test-tools.sh) serving a local folder, as a plain FTP server on a disk does.
#
#   python3 ftp_reference.py ROOT USER PASSWORD
#
# Prints "port N" once listening on 127.0.0.1. Each session is numbered, and greets its client
# with "220 reference ready, session S". It prints "gone S" once session S has ended (its files
# are closed by then), so the runner knows when a killed client's session is over, and
# "closed S" each time that session's data connection is closed (after its final reply is
# queued), so the runner knows a cut transfer is over before it starts the next one. Sessions
# are named by number, not by their client's port: the kernel gives a port out again, and a
# line about an earlier session from the same port was once taken for the current one's.
import itertools
import logging
import sys

try:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer
except ImportError:
    sys.stderr.write("pyftpdlib is not installed: run scripts/install-test-tools.sh\n")
    sys.exit(3)

root, user, password = sys.argv[1:4]
logging.basicConfig(level=logging.CRITICAL)


sessions = itertools.count(1)


class Handler(FTPHandler):
    session = 0

    def on_connect(self):
        # Before the greeting is sent (pyftpdlib calls this first).
        self.session = next(sessions)
        self.banner = "reference ready, session %d" % self.session

    def on_disconnect(self):
        print("gone", self.session, flush=True)

    def _on_dtp_close(self):
        super()._on_dtp_close()
        print("closed", self.session, flush=True)


authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
Handler.authorizer = authorizer
server = FTPServer(("127.0.0.1", 0), Handler)
print("port", server.socket.getsockname()[1], flush=True)
server.serve_forever(handle_exit=False)
