"""The one exception type for mistakes a user can fix.

UserError subclasses SystemExit on purpose: when it escapes a script, Python prints
only its message (no traceback) and exits with status 1, which is exactly what a
command-line user should see for bad input. Library code raises it; nothing catches it
except tests, which assert on the message.
"""


class UserError(SystemExit):
    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self):
        return self.message
