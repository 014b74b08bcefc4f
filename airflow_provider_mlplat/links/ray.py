"""Extra link from a Ray job task to the job's page on the Ray dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RayJobLink(BaseOperatorLink):
    """The Ray dashboard page of the job a task ran (the URL is kept in the task's XCom)."""

    name = "Ray job"

    @staticmethod
    def url(dashboard_url: str, job_id: str) -> str:
        """
        The dashboard page of a job.

        :param dashboard_url: Ray dashboard address.
        :param job_id: submission id.
        """
        return f"{dashboard_url.rstrip('/')}/#/jobs/{job_id}"

    def persist(self, context: Any, dashboard_url: str, job_id: str) -> None:
        """
        Store the link for the task instance (Airflow 3 serves extra links from XCom).

        :param context: the task's Airflow context.
        :param dashboard_url: Ray dashboard address.
        :param job_id: submission id.
        """
        context["ti"].xcom_push(key=self.xcom_key, value=self.url(dashboard_url, job_id))

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """
        The stored link of a task instance (empty before the job was submitted).

        :param operator: the task.
        :param ti_key: the task instance.
        """
        from airflow.sdk.bases.xcom import BaseXCom

        return BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
