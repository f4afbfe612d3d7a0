"""Reporting: tables, HTML report, recommendation, benefits, statistics."""
