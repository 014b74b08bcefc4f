"""Extra links whose URL the task stores in XCom while it runs (how Airflow 3 serves them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class XComStoredLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom (under the link's ``xcom_key``) while it ran."""

    name = ""

    @classmethod
    def persist(cls, context: Any, url: str) -> None:
        """
        Store the URL for the task instance that is running.

        :param context: the task's Airflow context.
        :param url: the page to link to.
        """
        context["ti"].xcom_push(key=cls().xcom_key, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """
        The stored URL, or an empty string when the task did not get that far.

        :param operator: the task's operator.
        :param ti_key: the task instance.
        """
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
