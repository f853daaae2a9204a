# Boards run main.py from the flash root at boot; a deploy copies this file there.
from servomesh.firmware import node

node.main()
