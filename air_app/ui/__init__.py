"""The Gradio web app: one module per tab; handlers call air_app.engine and hold no ML logic."""
