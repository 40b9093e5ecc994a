# main.py: build the board from /board.json and run the station.
#
# An unhandled exception opens the contactor, sets the pilot to state F, writes the
# traceback to /crash.txt for the next boot and resets the chip after a short delay.
# After bootinfo.CRASH_LIMIT (5) crashes in a row (watchdog resets included; the count
# lives in RTC memory and empties after bootinfo.CLEAN_RUN_MS of clean running) the next
# boot stays at the REPL: contactor off, no watchdog, and the reason printed.
# A bad board file is reported and the REPL stays (a reset would not fix it).
# In service mode (see boot.py) nothing is started.
# Ctrl-C opens the contactor (counted in the wear counters), saves the history and the
# counters, and leaves the station stopped at the REPL until a reset: a timer feeds the
# watchdog meanwhile, so the technician's view is not wiped (drivers/bootinfo.py).


def main():
    try:
        from drivers import bootinfo
    except Exception as e:
        print("main: drivers unavailable (%s); staying at the REPL" % (e,))
        return
    if not bootinfo.started:
        bootinfo.start()
    if bootinfo.service_mode:
        print("main: service mode, application not started")
        return
    if bootinfo.crash_loop:
        bootinfo.crash_loop_stop()
        return
    board = None
    try:
        from drivers.boardfile import BoardFileError, load
        from drivers.esp32_board import Esp32Board
        from firmware.board import LED_BOOT

        try:
            cfg = load(bootinfo.path("board.json"))
        except BoardFileError as e:
            bootinfo.board_file_error(e)
            return
        board = Esp32Board(cfg, fs_root=bootinfo.root)
        board.set_led(LED_BOOT)
        print("main: board %s, watchdog %d ms" % (board.name, board.watchdog_ms))
        board.start_watchdog()
        bootinfo.clean_run_timer(cfg)
        from firmware.station import Station

        Station(board).run()
        raise RuntimeError("Station.run() returned")
    except KeyboardInterrupt:
        bootinfo.interrupted(board)
    except Exception as e:
        bootinfo.crash(e, board)


main()
