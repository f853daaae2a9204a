"""The HTTP alternative for tools/bench_node.py: a Microdot app on the MicroPython unix port.

    MICROPYPATH=.frozen:<folder holding the installed microdot package> \\
        micropython tools/bench_microdot.py PORT

PUT /servo/<ch> with the pulse width as the body sets that channel's value and answers "ok".
Microdot answers HTTP/1.0 and closes the connection after each response (no keep-alive).
"""

import sys

from microdot import Microdot

app = Microdot()
servo = [0] * 8


@app.put("/servo/<int:ch>")
def put_servo(request, ch):
    servo[ch] = int(request.body)
    return "ok"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
