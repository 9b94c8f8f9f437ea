"""`python app.py [--host 127.0.0.1] [--port 7860] [--workspace DIR] [--root DIR] [--auth user:pass]`"""

from air_app.cli import _quiet_libraries
from air_app.ui.app import launch

if __name__ == "__main__":
    _quiet_libraries()
    launch()
