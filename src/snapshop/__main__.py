from snapshop.cli import run

run()
