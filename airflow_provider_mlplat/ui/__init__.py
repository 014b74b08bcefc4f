"""The Airflow UI plugin: the Models view, its actions, and links to the platform's services."""
