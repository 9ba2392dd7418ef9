"""The browser playground's static files (index.html, playground.js, playground.css); app/api/playground.py
serves them. A package so that the files ship in the wheel as package data."""
