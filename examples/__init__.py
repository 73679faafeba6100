"""Shipped example tasks: configs and data, installed as package data."""
