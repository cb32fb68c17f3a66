from kaset.cli import app

app()
