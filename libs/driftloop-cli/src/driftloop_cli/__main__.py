from driftloop_cli.main import app

app()
