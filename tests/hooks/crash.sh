#!/bin/sh
echo "loading model"
echo "Traceback (most recent call last):" >&2
echo "RuntimeError: reviewer exploded" >&2
exit 3
