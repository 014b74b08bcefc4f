"""The platform's secrets, generated once; standard library only (`python -m mlplat.keys .env`)."""

from __future__ import annotations

import base64
import os
import secrets
import sys
from pathlib import Path

#: the variables of the container stack's .env (docker-compose.yaml), by secret
ENV_NAMES = {
    "airflow_admin_password": "MLPLAT_ADMIN_PASSWORD",
    "airflow_jwt_secret": "MLPLAT_JWT_SECRET",
    "airflow_fernet_key": "MLPLAT_FERNET_KEY",
    "ray_auth_token": "MLPLAT_RAY_TOKEN",
    "postgres_password": "MLPLAT_POSTGRES_PASSWORD",
}


def generate() -> dict[str, str]:
    """Fresh secrets: Airflow admin and viewer passwords, JWT secret and Fernet key, Ray token."""
    return {
        "airflow_admin_password": secrets.token_urlsafe(12),
        "airflow_viewer_password": secrets.token_urlsafe(12),  # a read-only login (role VIEWER)
        "airflow_jwt_secret": secrets.token_urlsafe(64),  # Airflow wants 64+ bytes
        "airflow_fernet_key": base64.urlsafe_b64encode(
            os.urandom(32)
        ).decode(),  # what Fernet.generate_key() does
        "ray_auth_token": secrets.token_hex(32),
    }


def write_env(path: Path) -> bool:
    """
    Write the container stack's secrets to an env file (mode 0600) unless it exists; True if written.

    :param path: the file, usually ``.env`` next to docker-compose.yaml.
    """
    if path.exists():
        return False
    values = {**generate(), "postgres_password": secrets.token_hex(24)}  # URL-safe: it goes into DB URLs
    path.touch(mode=0o600)
    path.write_text(
        "# secrets of the container stack, generated once by `make compose-env`; keep out of version control\n"
        + "".join(f"{ENV_NAMES[key]}={value}\n" for key, value in values.items() if key in ENV_NAMES)
    )
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    print(f"{target}: {'written' if write_env(target) else 'exists, kept as it is'}")
