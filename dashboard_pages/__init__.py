"""The pages of the Streamlit dashboard (`dashboard.py` is the entry point).

`app` holds what every page shares (settings, the database pool, formatting, Telegram links),
`access` the password gate, `corrections` the forms that correct persons through persons.py.
The other modules are page scripts that Streamlit runs through `st.navigation`.
"""
